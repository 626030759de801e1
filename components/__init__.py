"""KFP components: one file each, typed artifacts in and out, a few lines that call kdflow.

Each module defines `make(image)`, which returns the component built on that image: the
image is a compile-time choice, never read from the environment at import time.
`parameters` is the one module that is not a component: how the settings dataclasses travel
as pipeline parameters, and back (the `settings` step).
"""
