"""The side-by-side benchmark harness (``bash bench/run.sh``, ``make bench``); see bench/README.md."""
