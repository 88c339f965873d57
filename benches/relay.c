// The floor of a proxy's cost on this machine: a zero-work TCP relay. Each client connection gets
// its own backend connection, and whatever one side sends is written to the other, with no
// parsing, no routing, no timers and no logging: one recv and one send per message, exactly the
// socket work an HTTP/1.1 keep-alive proxy cannot avoid. `floor.py` runs it beside haproxy and
// switchyard to show how much of a proxy's cost is the kernel's.
//
// usage: relay LISTEN_PORT UPSTREAM_PORT THREADS   (127.0.0.1 only)
// Each thread has its own SO_REUSEPORT listener and edge-triggered epoll loop.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_FD 65536
static int peer[MAX_FD];
static int listen_port, upstream_port;

static struct sockaddr_in loopback(int port) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
  inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
  return a;
}

static void add(int ep, int fd) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  struct epoll_event e = {.events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.fd = fd};
  epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
}

static void *worker(void *unused) {
  (void)unused;
  int one = 1;
  int l = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  setsockopt(l, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
  setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in la = loopback(listen_port), ua = loopback(upstream_port);
  if (bind(l, (void *)&la, sizeof la) || listen(l, 4096)) {
    perror("relay: listen");
    exit(1);
  }
  int ep = epoll_create1(0);
  struct epoll_event le = {.events = EPOLLIN, .data.fd = l};
  epoll_ctl(ep, EPOLL_CTL_ADD, l, &le);
  struct epoll_event evs[256];
  static __thread char buf[16384];
  for (;;) {
    int n = epoll_wait(ep, evs, 256, -1);
    for (int i = 0; i < n; i++) {
      int fd = evs[i].data.fd;
      if (fd != l && peer[fd] < 0) continue;  // closed with its peer earlier in this batch
      if (fd == l) {
        int c;
        while ((c = accept4(l, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
          int s = socket(AF_INET, SOCK_STREAM, 0);
          if (c >= MAX_FD || s < 0 || s >= MAX_FD || connect(s, (void *)&ua, sizeof ua)) {
            perror("relay: connect");
            close(c);
            if (s >= 0) close(s);
            continue;
          }
          fcntl(s, F_SETFL, O_NONBLOCK);
          peer[c] = s;
          peer[s] = c;
          add(ep, c);
          add(ep, s);
        }
        continue;
      }
      for (;;) {
        ssize_t r = recv(fd, buf, sizeof buf, 0);
        if (r > 0) {
          // Loopback with small messages: the peer's send buffer has room; a real proxy would
          // wait for it to drain here.
          for (ssize_t off = 0, w; off < r; off += w)
            if ((w = send(peer[fd], buf + off, r - off, MSG_NOSIGNAL)) <= 0) break;
          // A short read drained the socket (edge-triggered): no second recv for EAGAIN.
          if (r < (ssize_t)sizeof buf) break;
          continue;
        }
        if (r == 0 || errno != EAGAIN) {
          int p = peer[fd];
          peer[fd] = -1;
          if (p >= 0) {
            peer[p] = -1;
            close(p);
          }
          close(fd);
        }
        break;
      }
    }
  }
  return NULL;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: relay LISTEN_PORT UPSTREAM_PORT THREADS\n");
    return 2;
  }
  listen_port = atoi(argv[1]);
  upstream_port = atoi(argv[2]);
  int n = atoi(argv[3]);
  if (n < 1 || n > 64) n = 2;
  pthread_t t[64];
  for (int i = 0; i < n; i++) pthread_create(&t[i], NULL, worker, NULL);
  pthread_join(t[0], NULL);
  return 0;
}
