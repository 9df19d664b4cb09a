"""Active-active replicas: what one EPP replica learns reaches the others through Redis or Valkey.

Each replica publishes only its own numbers (its in-flight load per endpoint, its prefix-index inserts, the
per-endpoint counts plugins register) and adds up what the live replicas publish. Nothing is a shared
counter, so a replica that crashes or loses the store simply drops out of the others' view when its heartbeat
stops. The request path never waits on the store: it appends to a bounded outbox that a background task
sends, and remote numbers are folded into the table's columns between requests.

- `settings`: the `--shared-state` URL and password file;
- `columns`: per-endpoint numbers summed over live replicas and folded into the columns scorers read;
- `inserts`: prefix-index inserts sent to and applied from the other replicas;
- `codec`: the records on the wire (Redis stream entries);
- `exchange`: one replica's records to publish and the application of its peers', without a transport;
- `link`: the Redis connections, their background tasks and faults;
- `metrics`: what the link counts and measures.
"""
