"""kdflow: knowledge distillation from data to model registry.

The core library. It never imports kfp: components/ and pipelines/ wrap it.
"""

__version__ = "0.1.0"
