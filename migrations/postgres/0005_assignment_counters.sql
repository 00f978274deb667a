-- Assignment reads a few counter rows instead of counting `assignments`, whose size grows with
-- every lead ever assigned.

-- Open leads per rep. Whatever opens or closes an assignment changes this in the same transaction.
CREATE TABLE rep_load (
    team TEXT NOT NULL,
    rep TEXT NOT NULL,
    open_leads BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (team, rep)
);

-- The team's round-robin cursor: how many leads the team has been given so far. Its row is also
-- the lock that orders a team's assignments.
CREATE TABLE team_cursors (
    team TEXT PRIMARY KEY,
    next BIGINT NOT NULL
);

INSERT INTO rep_load (team, rep, open_leads)
SELECT team, rep, COUNT(*) FROM assignments WHERE status = 'assigned' GROUP BY team, rep;

INSERT INTO team_cursors (team, next)
SELECT team, COUNT(*) FROM assignments GROUP BY team;

-- "Does this enrollment already have a rep in this team?" is an index lookup.
CREATE INDEX assignments_enrollment ON assignments (enrollment_id, team);
