"""HTTP routes, one file per endpoint family. Routes parse, call the service, encode."""
