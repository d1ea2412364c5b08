"""`radpriv tune`: an Optuna search of learning rate and clipping per ε, with its privacy cost."""
