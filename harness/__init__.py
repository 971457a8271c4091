"""sopmoe harness: the CLI, configuration, evaluation runs, leaderboard and regression checks."""
