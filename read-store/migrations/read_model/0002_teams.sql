-- The organisation stream (`crm.organisation.*` events, key = the nil UUID): sales teams,
-- their directors and members. Query-service reads it to know whose customers a sales
-- director sees (those owned by the members of the teams they direct). Business time only.

CREATE TABLE teams (
    team_id       uuid        PRIMARY KEY,
    -- empty until the team's creation is seen (a member event never comes first in practice)
    name          text        NOT NULL DEFAULT '',
    director      text,
    created_at    timestamptz,
    -- the organisation stream's sequence of the last event that changed the team
    last_sequence bigint      NOT NULL,
    updated_at    timestamptz NOT NULL
);
CREATE INDEX teams_director ON teams (director);

CREATE TABLE team_members (
    team_id  uuid        NOT NULL,
    member   text        NOT NULL,
    added_at timestamptz NOT NULL,
    PRIMARY KEY (team_id, member)
);
CREATE INDEX team_members_member ON team_members (member);
