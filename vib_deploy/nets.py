"""`from vib_deploy.nets import load_model`: the entry point user code has used since 0.1; see modelfile.py."""

from vib_deploy.model.modelfile import load_model

__all__ = ["load_model"]
