/**
 * Maps `source` through `fn` with at most `concurrency` calls in flight, yielding
 * results in completion order. The first failure stops intake and is rethrown once
 * the calls in flight have settled; nothing is left running behind the caller.
 */
export async function * parallel<T, R> (source: Iterable<T> | AsyncIterable<T>, fn: (item: T) => Promise<R>, concurrency: number): AsyncGenerator<R> {
  const iterator = (Symbol.asyncIterator in source ? source[Symbol.asyncIterator]() : source[Symbol.iterator]()) as AsyncIterator<T> | Iterator<T>
  type Settled = { ok: true, value: R } | { ok: false, error: unknown }
  const settled: Settled[] = []
  let wake: (() => void) | undefined
  let active = 0
  let exhausted = false
  let failure: { error: unknown } | undefined
  const settle = (result: Settled): void => {
    active--
    settled.push(result)
    const w = wake
    wake = undefined
    w?.()
  }
  const waitForOne = async (): Promise<void> => { await new Promise<void>(resolve => { wake = resolve }) }
  try {
    while (true) {
      while (!exhausted && failure === undefined && active < concurrency) {
        const next = await iterator.next()
        if (next.done === true) {
          exhausted = true
          break
        }
        active++
        fn(next.value).then(value => { settle({ ok: true, value }) }, error => { settle({ ok: false, error }) })
      }
      const result = settled.shift()
      if (result === undefined) {
        if (active === 0) break
        await waitForOne()
        continue
      }
      if (!result.ok) failure ??= { error: result.error }
      else if (failure === undefined) yield result.value
    }
    if (failure !== undefined) throw failure.error
  } finally {
    if (!exhausted) await iterator.return?.()
    while (active > 0) await waitForOne()
  }
}
