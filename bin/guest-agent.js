#!/usr/bin/env node
import { main } from '../dist/guest-agent/cli.js';

await main(process.argv);
