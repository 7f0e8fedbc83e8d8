"""The ``dyconv-deploy`` command line: one module per subcommand over the library."""
