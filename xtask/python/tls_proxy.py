"""A TLS-terminating TCP proxy, so that the Kafka tests reach a broker over TLS: accepts TLS
on 127.0.0.1:<listen> with <cert>/<key> and forwards the plaintext to 127.0.0.1:<upstream>.
Usage: tls_proxy.py CERT KEY LISTEN_PORT UPSTREAM_PORT"""

import asyncio
import ssl
import sys

cert, key, listen, upstream = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def handle(client_reader, client_writer):
    try:
        broker_reader, broker_writer = await asyncio.open_connection("127.0.0.1", upstream)
    except OSError:
        client_writer.close()
        return
    await asyncio.gather(pipe(client_reader, broker_writer), pipe(broker_reader, client_writer))


async def main():
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = await asyncio.start_server(handle, "127.0.0.1", listen, ssl=context)
    async with server:
        await server.serve_forever()


asyncio.run(main())
