"""The HTTP/JSON edge: OpenAI's Vector Stores REST API (under ``/v1`` and the gateway's
``/api/v1/llm``) over the same core objects the gRPC servicers use.

The core never imports this package; handlers validate, call the core and convert.
"""
