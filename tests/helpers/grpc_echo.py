"""A gRPC peer for the gateway's tests, built on grpcio (an independent HTTP/2 stack).

    grpc_echo.py serve          starts a server on a free loopback port and prints the port
    grpc_echo.py client HOST:PORT
                                calls the server (through the gateway) and prints JSON

Service `test.Echo` with raw-bytes messages (no generated code needed):
  Say(bytes) -> bytes      reversed; sets trailing metadata; b"fail" aborts INVALID_ARGUMENT
  Count(bytes n) -> stream n messages "0".."n-1"
"""

import json
import sys
from concurrent import futures

import grpc


def say(request, context):
    if request == b"fail":
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "asked to fail")
    context.set_trailing_metadata((("x-trailer", "present"),))
    return request[::-1]


def count(request, context):
    for i in range(int(request.decode())):
        yield str(i).encode()


def serve():
    handler = grpc.method_handlers_generic_handler(
        "test.Echo",
        {
            "Say": grpc.unary_unary_rpc_method_handler(say),
            "Count": grpc.unary_stream_rpc_method_handler(count),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


def client(target):
    channel = grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)])
    out = {}
    say_rpc = channel.unary_unary("/test.Echo/Say")
    reply, call = say_rpc.with_call(b"hello", timeout=10)
    out["say"] = reply.decode()
    out["trailers"] = {k: v for k, v in call.trailing_metadata()}
    try:
        say_rpc(b"fail", timeout=10)
        out["fail"] = None
    except grpc.RpcError as e:
        out["fail"] = [e.code().name, e.details()]
    count_rpc = channel.unary_stream("/test.Echo/Count")
    out["count"] = [m.decode() for m in count_rpc(b"100", timeout=10)]
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve()
    else:
        client(sys.argv[2])
