/* main: placeholder wiring during bring-up; replaced by the CLI below. */
#include <stdio.h>
int main(void) { return 0; }
