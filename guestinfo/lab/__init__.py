"""The lab: tooling around the product, not part of it. A simulated fleet (`simulation`: simulated
domains and guest agents behind real collectors), the benchmark (`bench`) and its HTTP load client
(`rest_load`). `guestinfo simulate` and `guestinfo bench` run them."""
