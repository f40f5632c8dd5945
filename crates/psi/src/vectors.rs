//! Known-answer tests: RFC 9496 appendix A and Accord's own vectors in docs/PROTOCOL.md.
