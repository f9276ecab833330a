"""The evidence side of planning: the one place where planning reads and writes the home.

``predict/`` computes from values; everything it is given that lives in a home is read
here: the calibration file (``calibration_file``), the solve rates probes measured
(``home``), the posteriors already fitted (``posterior_cache``) and the finished runs
that ``s2d-plan calibrate`` turns into evidence (``from_runs``). ``read_home`` gathers
what one plan needs in one pass over the history.
"""
