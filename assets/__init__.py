"""The shipped default model, ``assets/model`` (installed as ``sdecore/assets/model``)."""
