"""Scale-out engines: ``zsad detect --engine ray`` (Ray Data). Optional: ``pip install 'zsad[ray]'``."""
