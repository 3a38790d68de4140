
/*
 * Copyright (C) RedisGate authors
 */


/*
 * fuzz_reply's checks on the encoders built without SSE2
 * (NGX_HTTP_REDISGATE_NO_SIMD, from fuzz/Makefile): the word-at-a-time
 * scan that machines other than x86-64 run.
 */


#include "fuzz_reply.c"
