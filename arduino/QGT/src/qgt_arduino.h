/* Board side of the person_detection sketch: the serial monitor, the RGB LED and a fault loop that never
 * hangs silently. Needs Arduino.h, so it is compiled in Arduino builds only (QGT.h includes it there). */
#ifndef QGT_ARDUINO_H
#define QGT_ARDUINO_H

#include <Arduino.h>
#include <stdint.h>

namespace qgt {

/* Serial.begin(baud), then waits up to wait_ms for a serial monitor to open: the board's USB serial drops
 * what is printed before. */
void beginSerial(unsigned long baud, unsigned long wait_ms);

/* The RGB LED green for a person, red for none (the Nano 33 BLE's RGB LED is active low); on boards
 * without LEDR/LEDG, LED_BUILTIN lights for a person. */
void showPerson(bool present);

/* One line on serial: "person 873/1000 yes  inference 412345 us  frame 1002345 us". */
void report(int32_t score_permille, bool present, uint32_t inference_us, uint32_t frame_us);

/* Never returns: prints "QGT error: <problem><detail>" at once and every 5 s, blinking the red LED (the
 * built-in LED elsewhere) three times between, so a monitor opened late still sees why the sketch stopped. */
[[noreturn]] void halt(const char* problem, const char* detail = "");

}  // namespace qgt

#endif /* QGT_ARDUINO_H */
