"""What tests and benchmarks start: the service as a process, a two-node Ray cluster, the container images, the
service with a stand-in network. The product never imports it."""
