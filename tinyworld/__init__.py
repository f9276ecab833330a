"""tinyworld: a synthetic, verifiable math world small enough to run the whole
sparse-to-dense pipeline on a CPU (issue 6). ``tinyworld.task`` generates problems,
``tinyworld.build`` pretrains the base models; ``benchmarks.tinyworld`` runs the arms."""
