/** Wire limits shared by every passthru server and client. */

/** 1 MiB of block data plus room for the message around it. */
export const MAX_MESSAGE_BYTES = 4 * 1024 * 1024;

/** HTTP/2 receive window a client offers per connection (see common/server.ts for servers). */
export const RECEIVE_WINDOW_BYTES = 16 * 1024 * 1024;
