"""Built-in target plugins (registered under the `edgepipe.targets` entry-point group) and profiles."""
