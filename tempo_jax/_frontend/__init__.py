"""The front end: recurrent tensors, indexing, definitions, and the JAX-mirror op set."""
