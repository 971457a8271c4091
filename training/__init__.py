"""sopmoe training: the test-bed builder, router and distillation trainers."""
