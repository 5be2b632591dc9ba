"""Demo upstreams for graygate: an order service as the stable Python primary
(``graygate.examples.orders``) and as its Go rewrite, the canary (``examples/canary``)."""
