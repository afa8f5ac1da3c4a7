"""How bytes move between server and clients: messages, channels (in-process, Ray objects, gRPC), the
server boundary's admission, codecs, byte accounting."""
