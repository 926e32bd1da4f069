/* Board side of the person_detection sketch (qgt_arduino.h). */
#include "qgt_arduino.h"

#include <initializer_list>

namespace qgt {

namespace {

#if defined(LEDR) && defined(LEDG) && defined(LEDB)
constexpr bool kRgbLed = true;
constexpr int kRed = LEDR, kGreen = LEDG, kBlue = LEDB;
constexpr int kOn = LOW, kOff = HIGH; /* active low */
#else
constexpr bool kRgbLed = false;
constexpr int kRed = LED_BUILTIN, kGreen = LED_BUILTIN, kBlue = LED_BUILTIN;
constexpr int kOn = HIGH, kOff = LOW;
#endif

void setUp() {
  static bool done = false;
  if (done) return;
  for (int pin : {kRed, kGreen, kBlue}) {
    pinMode(pin, OUTPUT);
    digitalWrite(pin, kOff);
  }
  done = true;
}

}  // namespace

void beginSerial(unsigned long baud, unsigned long wait_ms) {
  Serial.begin(baud);
  const unsigned long start = millis();
  while (!Serial && millis() - start < wait_ms) delay(10);
}

void showPerson(bool present) {
  setUp();
  if (kRgbLed) {
    digitalWrite(kBlue, kOff);
    digitalWrite(kGreen, present ? kOn : kOff);
    digitalWrite(kRed, present ? kOff : kOn);
  } else {
    digitalWrite(kGreen, present ? kOn : kOff);
  }
}

void report(int32_t score_permille, bool present, uint32_t inference_us, uint32_t frame_us) {
  Serial.print("person ");
  Serial.print(score_permille);
  Serial.print("/1000 ");
  Serial.print(present ? "yes" : "no ");
  Serial.print("  inference ");
  Serial.print(inference_us);
  Serial.print(" us  frame ");
  Serial.print(frame_us);
  Serial.println(" us");
}

void halt(const char* problem, const char* detail) {
  setUp();
  for (int pin : {kRed, kGreen, kBlue}) digitalWrite(pin, kOff);
  for (;;) {
    Serial.print("QGT error: ");
    Serial.print(problem);
    Serial.println(detail);
    for (int blink = 0; blink < 3; ++blink) {
      digitalWrite(kRed, kOn);
      delay(200);
      digitalWrite(kRed, kOff);
      delay(200);
    }
    delay(3800);
  }
}

}  // namespace qgt
