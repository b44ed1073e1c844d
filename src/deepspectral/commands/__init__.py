"""Command families of the ``deepspectral`` CLI beyond eigs / localize / segment."""
