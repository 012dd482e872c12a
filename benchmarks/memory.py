def measure(ctx):
    return []
