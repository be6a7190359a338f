"""Images produced elsewhere (a closed API, another code base), read from a folder or a CSV mapping."""
