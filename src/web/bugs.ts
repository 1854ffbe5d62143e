// Programmer errors in the console: rethrown by every catch (rethrowIfBug, as src/core does on the
// server), and shown as a banner when they reach the window, so that a bug is never silent.

/** TypeErrors, RangeErrors and ReferenceErrors mean the console's code is wrong: never handled. */
export function rethrowIfBug(error: unknown): void {
  if (error instanceof TypeError || error instanceof RangeError || error instanceof ReferenceError)
    throw error;
}

/** Shows errors nobody handled (a bug) at the top of the page, with what to do. */
export function showBugs(): void {
  const show = (message: string): void => {
    const banner = document.createElement('div');
    banner.className = 'error bug';
    banner.setAttribute('role', 'alert');
    banner.dataset.testid = 'bug';
    banner.textContent = `The console hit a bug: ${message}. Reload the page; the CLI shows the same data.`;
    document.body.prepend(banner);
  };
  window.addEventListener('error', (event) => show(event.message));
  window.addEventListener('unhandledrejection', (event) => {
    const reason: unknown = event.reason;
    show(reason instanceof Error ? reason.message : String(reason));
  });
}
