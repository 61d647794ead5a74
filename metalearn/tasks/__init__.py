"""Tasks: which images form each episode (seeded plans, then gathered pixels), the training sources
that feed a method's train_step (episodes, verification pairs, labelled batches), and batch augmentation.

The second floor of the pipeline: data -> tasks -> methods -> engine -> entry points.
"""
