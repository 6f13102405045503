/* The pod sandbox's pause process for the test bed: sleeps until told to stop. No registry
 * is reachable from the test machines, so the sandbox image is built from this. */
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }

int main(void) {
    signal(SIGINT, stop);
    signal(SIGTERM, stop);
    for (;;) pause();
}
