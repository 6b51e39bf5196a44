"""
One client's rate while others keep the server busy: what bench/dnsbl_speed.py
(slow DNS) and bench/content_speed.py (big messages judged) measure.
"""

import threading
import time


def foreground_rate(send_foreground, send_background, background_clients, messages):
    """
    Messages/s of C{send_foreground()}, called C{messages} times in a row
    after a warm-up, while C{background_clients} threads call
    C{send_background()} as fast as they can (from a second before).
    """
    stop = threading.Event()

    def background():
        while not stop.is_set():
            send_background()

    send_foreground()
    threads = [threading.Thread(target=background) for _ in range(background_clients)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1)
        start = time.monotonic()
        for _ in range(messages):
            send_foreground()
        return messages / (time.monotonic() - start)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
