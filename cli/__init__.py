"""The ``dyconv-deploy`` command line: one module per subcommand over the library."""

import os

# numpy asks the kernel for transparent huge pages for every large array. Where the kernel then compacts
# memory when a page is first touched (transparent_hugepage/defrag = madvise, as on the machines this was
# measured on), a new 240 MB array takes ~2 s to fill instead of 0.15 s, and lowering and writing a large
# model makes several such copies (DY-ResNet-18's plugin lowering: 4.1-6.0 s -> 2.9-3.0 s). The command
# line turns it off before numpy is imported, unless NUMPY_MADVISE_HUGEPAGE is set.
os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")
