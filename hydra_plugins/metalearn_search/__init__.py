"""metalearn's Optuna sweeper for Hydra (`search=<space>`), on current Optuna; see optuna_search.py."""
