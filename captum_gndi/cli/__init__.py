"""The ``captum-gndi`` command line: validate, score, describe, demo, prune and verify.

Every subcommand loads a model (:func:`load_model`) and, where it needs one, a data set
(:func:`load_data`); problems with the user's input (a wrong path, a corrupt checkpoint, an
unknown model name, a folder without CIFAR-10 files) end the program with exit status 2 and
one line on stderr.

Layout: :mod:`.loaders` (models, data, layers, count checks), :mod:`.options` (options shared
by subcommands and the deprecated spellings), one module per subcommand (:mod:`.describe`,
:mod:`.score`, :mod:`.validate`, :mod:`.demo`, :mod:`.prune`, :mod:`.verify`) and
:mod:`.parser` (:func:`build_parser`, :func:`main`). The console script ``captum-gndi`` and
``python -m captum_gndi`` both call :func:`main`.
"""

from .loaders import LoadedModel, load_data, load_model
from .parser import build_parser, main

__all__ = ["LoadedModel", "build_parser", "load_data", "load_model", "main"]
