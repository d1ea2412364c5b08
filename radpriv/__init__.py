"""radpriv: differentially private LoRA fine-tuning for multi-label radiology report classification.

Importing the package has no side effects; the heavy stacks (torch, transformers, opacus,
mlflow) are imported by the submodules that need them.
"""

__version__ = "0.1.0"
