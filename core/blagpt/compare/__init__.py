"""Many runs on equal terms: ``bench`` and ``ablate`` (a plan, its state, the supervisor that runs
each training run as a child process, the MLflow parent run), ``compare`` (from MLflow), and the
leaderboard with its statistics and plots."""
