/** Byte streams in tests: collecting one, and cutting bytes into one. */

/** Concatenates every chunk of a byte stream. */
export async function collect (chunks: AsyncIterable<Uint8Array>): Promise<Uint8Array> {
  const parts: Uint8Array[] = []
  for await (const chunk of chunks) parts.push(chunk)
  return new Uint8Array(Buffer.concat(parts))
}

/** `bytes` as a stream of `size`-byte chunks (copies, so no chunk shares memory with another). */
export async function * chunked (bytes: Uint8Array, size: number): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < bytes.length; i += size) yield bytes.slice(i, i + size)
}
