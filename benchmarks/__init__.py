"""The project's benchmarks: thin `python -m benchmarks.NAME` scripts that print their figures
(the tinyworld lab they drive lives in the ``tinyworld`` package)."""
