#!/usr/bin/env node
import { main } from '../dist/common/passthru-cli.js';

await main(process.argv);
