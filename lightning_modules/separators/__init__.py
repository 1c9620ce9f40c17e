"""What is trained: the LightningModules of the suite (``Separator`` and its subclasses), their
losses, the PSP schedule and checkpoint loading. The classes are exported, lazily, by
``lightning_modules`` itself (``lightning_modules.SpectrogramSeparator``: the class paths of the
experiment files)."""
