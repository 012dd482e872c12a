"""The order tests run in: the generated test suites first, the full ones before the focused.

A full generated suite takes minutes on one worker, most other tests seconds. pytest-xdist hands
out the first quarter of the tests round-robin and the rest as workers free up, so with the long
suites first they are shared between the workers from the start, and the short tests fill the gaps;
collected last (tests/test_variants.py is near the end of the alphabet), one worker would still be
running a long suite after the other had finished everything else.
"""

from __future__ import annotations

GENERATED_SUITE = "tests/test_variants.py::test_the_generated_test_suite_passes_on_cpu["


def pytest_collection_modifyitems(items) -> None:
    def expected_length(item) -> int:
        """0 for the longest: the full suites of variants with --ddp, then the other full
        suites, then the focused ones; 3 for the rest (kept in their order)."""
        if not item.nodeid.startswith(GENERATED_SUITE):
            return 3
        variant = item.callspec.params["variant"]
        if variant.suite != "full":
            return 2
        return 0 if variant.ddp else 1

    items.sort(key=expected_length)  # stable: each group keeps its collected order
