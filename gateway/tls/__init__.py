"""TLS for the gateway: the appliance's own CA and certificates, SSL contexts, ClientHello parsing.

``certs`` writes and checks certificate files, ``context`` turns them into
``ssl.SSLContext`` objects, and ``clienthello`` is a pure parser the gateway
uses to peek at SNI and ALPN before choosing what to do with a connection.
"""
