/**
 * Logging for the repo engine without a logging dependency: the engine stays
 * pure (bytes in, verdicts out), so whoever calls it passes a logger in, through
 * the `log` option of the functions that log. Without one, nothing is logged.
 */

/**
 * A printf-style debug logger, as the project's component loggers are
 * (`logger('atmirror:repo')` from the node's composition): `%s` strings, `%d`
 * numbers, `%c` CIDs, `%e` errors.
 */
export type RepoLogger = (formatter: string, ...args: unknown[]) => void
