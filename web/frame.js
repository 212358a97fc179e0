// One requestAnimationFrame for all DOM work: callers register what needs redrawing and
// it runs once, in registration order, right before the next paint. Many events in one
// frame therefore cost one DOM update, not one per event.

const pending = new Set();
let requested = false;

function run() {
  requested = false;
  const jobs = [...pending];
  pending.clear();
  for (const job of jobs) job();
}

/** Run `job` before the next paint (once, however often it is asked for). */
export function onFrame(job) {
  pending.add(job);
  if (!requested) {
    requested = true;
    requestAnimationFrame(run);
  }
}
