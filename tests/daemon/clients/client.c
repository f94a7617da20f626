/*
 * A pipework client in C, with nothing but libzmq: proof that the wire
 * protocol (docs/protocol.md) needs no Python on the client side.
 *
 *     cc client.c -o client $(pkg-config --cflags --libs libzmq)
 *     ./client ipc:///tmp/pipework-1000/pipework.sock [key]
 *
 * Connects a DEALER, submits add(2, 3) under an idempotency key, prints the
 * reply line, then asks for the result (waiting up to 10 s) and prints that
 * reply line. Exits nonzero on any failure, or when a reply takes more than
 * 10 s (ZMQ_RCVTIMEO). No JSON library: requests
 * are built with snprintf and the task id is found in the reply with strstr.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#define MAX_REPLY (1 << 20)

static int fail(const char *what)
{
    fprintf(stderr, "client: %s: %s\n", what, zmq_strerror(zmq_errno()));
    return 1;
}

/* Send one request frame; receive one reply frame into buf (NUL-terminated). */
static int roundtrip(void *sock, const char *request, char *buf, size_t cap)
{
    if (zmq_send(sock, request, strlen(request), 0) < 0)
        return fail("send");
    int n = zmq_recv(sock, buf, cap - 1, 0);
    if (n < 0)
        return fail("receive (no reply in time?)");
    if ((size_t)n > cap - 1) {
        fprintf(stderr, "client: reply of %d bytes truncated\n", n);
        return 1;
    }
    int more = 0;
    size_t more_size = sizeof more;
    zmq_getsockopt(sock, ZMQ_RCVMORE, &more, &more_size);
    if (more) {
        fprintf(stderr, "client: reply has more than one frame\n");
        return 1;
    }
    buf[n] = '\0';
    printf("%s\n", buf);
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s ENDPOINT [KEY]\n", argv[0]);
        return 2;
    }
    char key[128];
    if (argc == 3)
        snprintf(key, sizeof key, "%s", argv[2]);
    else
        snprintf(key, sizeof key, "c-client-%ld", (long)getpid());

    void *ctx = zmq_ctx_new();
    void *sock = zmq_socket(ctx, ZMQ_DEALER);
    if (!ctx || !sock)
        return fail("socket");
    int timeout_ms = 10000; /* add(2, 3) finishes long before the daemon's 10 s wait */
    int linger = 0;
    zmq_setsockopt(sock, ZMQ_RCVTIMEO, &timeout_ms, sizeof timeout_ms);
    zmq_setsockopt(sock, ZMQ_SNDTIMEO, &timeout_ms, sizeof timeout_ms);
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_connect(sock, argv[1]) != 0)
        return fail("connect");

    static char reply[MAX_REPLY];
    char request[512];
    int status = 1;

    snprintf(request, sizeof request,
             "{\"v\":1,\"id\":\"c-1\",\"op\":\"submit\",\"task\":\"add\","
             "\"args\":[2,3],\"key\":\"%s\"}",
             key);
    if (roundtrip(sock, request, reply, sizeof reply) != 0)
        goto out;
    if (!strstr(reply, "\"ok\":true") && !strstr(reply, "\"ok\": true")) {
        fprintf(stderr, "client: submit was refused\n");
        goto out;
    }

    /* "task_id":"<32 hex>" (allow one space after the colon, as Python's json emits). */
    const char *p = strstr(reply, "\"task_id\":");
    if (!p) {
        fprintf(stderr, "client: no task_id in the submit reply\n");
        goto out;
    }
    p += strlen("\"task_id\":");
    while (*p == ' ')
        p++;
    if (*p != '"') {
        fprintf(stderr, "client: task_id is not a string\n");
        goto out;
    }
    p++;
    const char *end = strchr(p, '"');
    if (!end || end - p < 1 || end - p > 64) {
        fprintf(stderr, "client: malformed task_id\n");
        goto out;
    }
    char task_id[65];
    memcpy(task_id, p, (size_t)(end - p));
    task_id[end - p] = '\0';

    snprintf(request, sizeof request,
             "{\"v\":1,\"id\":\"c-2\",\"op\":\"result\",\"task_id\":\"%s\",\"wait\":10}", task_id);
    if (roundtrip(sock, request, reply, sizeof reply) != 0)
        goto out;
    if (!strstr(reply, "\"ok\":true") && !strstr(reply, "\"ok\": true")) {
        fprintf(stderr, "client: result was refused\n");
        goto out;
    }
    status = 0;
out:
    zmq_close(sock);
    zmq_ctx_term(ctx);
    return status;
}
